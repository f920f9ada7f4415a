"""The stateless MCP + REST front of the diffusers runtime. Never imports torch."""
