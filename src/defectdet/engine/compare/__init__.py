"""``defectdet compare``: imbalance remedies trained with one budget and tabulated."""
