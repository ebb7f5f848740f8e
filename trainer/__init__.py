"""Offline training for rtcalm's CalM models (imports rtcalm; rtcalm never imports this package).

    python -m trainer pretrain --config configs/pretrain_default.json
"""
