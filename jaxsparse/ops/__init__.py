"""Operations: the public `attention` entry point and its backends."""

from jaxsparse.ops.api import attention
from jaxsparse.ops.config import Config

__all__ = ["Config", "attention"]
