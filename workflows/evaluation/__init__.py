"""``mien evaluate``: ``evaluate`` predicts with a model on labeled faces and reports;
``metrics`` holds the FE/AU metrics, calibration and plots.
"""
