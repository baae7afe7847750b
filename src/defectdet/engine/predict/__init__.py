"""``defectdet predict``: the streamed prediction run and its output files."""
