"""The blocked XLA implementation: runs everywhere, O(T * block) memory."""
