"""The Prefect flows: the analysis run, its rounds, the STACK job subflow.

Every process that runs one of them sends flow-run heartbeats that stop with the flow (see
``flows/heartbeats.py``): Prefect's own make each flow's exit wait up to a second.
"""

from flows import heartbeats

heartbeats.install()
