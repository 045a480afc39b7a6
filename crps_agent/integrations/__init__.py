"""Ways to use crps-agent's memory from other agents: a LangGraph store
(`integrations.langgraph.ChromaStore`), LangChain tools (`integrations.langchain`), an MCP
server (`integrations.mcp`); the HTTP service is `crps_agent.service`. Each module imports
its framework only when imported itself."""
