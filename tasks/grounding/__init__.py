"""Grounding: how well a prediction agrees with what is known, scored by code.

Read it as scanpy reads: ``pack`` loads what is known (gene sets, the Cell Ontology),
``expectations`` says what the question predicts, ``enrichment`` and ``scores`` compute, ``plots``
draw; each is pure and tested alone. ``steps`` holds the Prefect tasks on top. Nothing is
re-exported here, so importing a pure module does not load Prefect.
"""
