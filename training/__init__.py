"""gamjeong.training: cleaning and splitting data, fine-tuning, evaluation and `gamjeong classify`. Writes the trained
model directory (gamjeong/artifacts.py).

config.py (TrainConfig), train.py (the Trainer run), budget.py (--time-budget), data.py (cleaning, splits, the
GoEmotions download; reading files is gamjeong.datafiles), evaluation.py (metrics, report, pictures), model_card.py,
inspection.py (`gamjeong data inspect`), classify.py (`gamjeong classify`), cli.py (the commands).
Only orchestrators import this package (the CLI modules and gamjeong.quickstart); export, server, clients, benchmarks
and the core do not.
"""
