"""The caveats code knows for certain about a grounded prediction, worded once.

The findings, the score card and the report all state them; one wording each means the report can
show every caveat once, whoever added it.
"""

from __future__ import annotations

UNTRAINED = (
    "The STACK checkpoint is untrained (randomly initialised): the predictions, the DE and the scores show "
    "that the pipeline works, not biology. Point STACKFLOWS_MODEL__CHECKPOINT_URI at a trained checkpoint "
    "for real results."
)
DESCRIPTIVE_P = (
    "P-values and q-values over generated cells are descriptive: they shrink as more cells are generated, so "
    "a small q says the model moved a gene consistently across its generated cells, not that the effect is "
    "real; read them with the effect sizes (LFC) and the share of cells moving the same way."
)
QUERY_AS_CONTROL = (
    "The reference is the query input itself (query-as-control, unpaired), which is weaker than a synthetic "
    "control: how generated cells differ from measured ones counts as effect. Name a baseline value of the "
    "split column (PBS, vehicle, untreated, ...) as control_value for a paired comparison."
)
