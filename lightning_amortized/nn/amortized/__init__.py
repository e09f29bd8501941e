"""Amortized encoders (AmNet): branches of different cost and an arbitrator choosing one per frame.

=================  ==========================================================================
``encoder``        the public modules :class:`AmortizedEncoder`, :class:`SharedStateAmortizedEncoder`
``routing``        :class:`RoutingInfo`, the routing of the last batch
``fast``           the fast-branch kinds (low-rank, sparse, small) behind one layer interface
``shared``         the shared-state core (one state, two weight sets, one time loop)
``independent``    the independent-encoders core (one state per encoder)
``cells``          the LSTM/GRU cell equations
=================  ==========================================================================
"""

from lightning_amortized.nn.amortized.cells import gru_cell as _gru_cell  # noqa: F401  (lightning_amortized.export)
from lightning_amortized.nn.amortized.cells import lstm_cell as _lstm_cell  # noqa: F401
from lightning_amortized.nn.amortized.encoder import AmortizedEncoder, SharedStateAmortizedEncoder
from lightning_amortized.nn.amortized.fast import FAST_KINDS
from lightning_amortized.nn.amortized.independent import _IndependentCore  # noqa: F401  (lightning_amortized.export)
from lightning_amortized.nn.amortized.routing import RoutingInfo
from lightning_amortized.nn.amortized.shared import _SharedRecurrentCore  # noqa: F401

__all__ = ["AmortizedEncoder", "SharedStateAmortizedEncoder", "RoutingInfo", "FAST_KINDS"]
