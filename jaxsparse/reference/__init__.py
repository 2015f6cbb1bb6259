"""Dense f32 attention with an explicit mask: the oracle every backend matches."""

from jaxsparse.reference.dense import attention_reference

__all__ = ["attention_reference"]
