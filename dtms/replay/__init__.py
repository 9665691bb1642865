"""`dtms replay`: what DTMS would have done with recorded trades, on recorded history.

history in (dtms/brokers/sim/history.py), the engine on a virtual clock (engine.py, loop.py),
the report and pictures out (report.py, pictures.py); the command in cli.py.
"""
