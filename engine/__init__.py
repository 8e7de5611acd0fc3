"""The training engine (a layer above data, models and utils): the trainer and its step, checkpointing, and
the run's log. ``main_pretrain.py`` is the command line and the loop that drives it."""
