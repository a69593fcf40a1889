"""Local admission's policy (mode full): ``admit.decide(view, now)`` dispatches one GPU group's
queue earliest deadline first under KV room and sheds what cannot meet its deadline
(``moore_hodgson.py``)."""
