"""Offline training for rtcalm's models (imports rtcalm; rtcalm never imports this package). Every model
trains in one loop (trainer.loop) with one backward pass (trainer.steps.backward_step).

    python -m trainer pretrain --config configs/pretrain_default.json
    python -m trainer baselines --config configs/pretrain_default.json
    python -m trainer movie --synthetic
    python -m trainer allen-export --nwb FILE.nwb --out exports/allen
"""
