"""Paper 4 (Merrill, Sabharwal, Smith 2022): saturated attention.

Modules: :mod:`~assay.saturation.numbers` (exact rationals, p-bit floats), :mod:`~.interpreter`
(exact / p-bit forward pass), :mod:`~.languages` (reference recognisers), :mod:`~.constructions`
(hand-built saturated transformers), :mod:`~.bits` (bit profiler), :mod:`~.circuit` (threshold-circuit
compiler), :mod:`~.meter` (saturation of trained models), :mod:`~.commands` and :mod:`~.demo`.
"""
