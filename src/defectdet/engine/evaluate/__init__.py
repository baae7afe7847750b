"""``defectdet evaluate``: metrics (one MetricsResult), scoring a detector on a catalogue (also
used by train-time validation and compare), the command and its rendering."""
