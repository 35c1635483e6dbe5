"""metasup-mcp: an MCP server that governs other MCP servers."""

__version__ = "0.1.0"
