"""``defectdet calibrate``: operating points (thresholds with their evidence) chosen on a
labelled split."""
