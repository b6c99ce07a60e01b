"""The agent: plan a run (Claude with tools, or the offline planner) and interpret its results.

Pure logic lives in plain modules (``plan``, ``plan_checks``, ``plan_data``, ``tools``, ``claude``,
``offline_planner``, ``offline_findings``); ``steps`` holds the Prefect tasks on top. Nothing is
re-exported here, so importing a pure module does not load Prefect.
"""
