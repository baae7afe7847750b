"""``defectdet report``: one self-contained HTML file per run, evaluation or study."""
