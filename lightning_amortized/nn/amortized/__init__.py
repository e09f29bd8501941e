"""Amortized encoders (AmNet): branches of different cost and an arbitrator choosing one per frame.

=================  ==========================================================================
``encoder``        the public modules :class:`AmortizedEncoder`, :class:`SharedStateAmortizedEncoder`
``routing``        :class:`RoutingInfo`, the routing of the last batch
``fast``           the fast-branch kinds (low-rank, sparse, small) behind one layer interface
``shared``         the shared-state core (one state, two weight sets, one time loop)
``scan``           the fused training scan of shared-state LSTM layers (one autograd node per layer)
``independent``    the independent-encoders core (one state per encoder)
``cells``          the LSTM/GRU cell equations
=================  ==========================================================================
"""

from lightning_amortized.nn.amortized.encoder import AmortizedEncoder, SharedStateAmortizedEncoder
from lightning_amortized.nn.amortized.fast import FAST_KINDS
from lightning_amortized.nn.amortized.routing import RoutingInfo

__all__ = ["AmortizedEncoder", "SharedStateAmortizedEncoder", "RoutingInfo", "FAST_KINDS"]
