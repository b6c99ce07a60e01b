"""The closed loop: rounds of plan, STACK, score, refine, until the prediction is grounded.

``models`` holds what a round leaves behind; ``stopping`` the rules that end the loop; ``budget``
what the rounds so far cost and what the next would. All pure; the round itself is the subflow
``flows/analysis_round.py``. Nothing is re-exported here, so importing a module loads no Prefect.
"""
