"""``mien retrain``: ``cycle`` is one idempotent retraining cycle (watermark, select, train,
evaluate, register, promote).
"""
