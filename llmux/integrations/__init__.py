"""Pieces that let other engines use llmux nodes: the placement rule, and a routing
strategy for the LiteLLM proxy (``llmux.integrations.litellm``, with the ``litellm`` extra)."""
