"""What both deployables speak, with no torch, diffusers or transformers: the log schema and
request ids. The MCP server's image imports it beside `mcp_server`, the runtime's beside
`diffusers_runtime`."""
