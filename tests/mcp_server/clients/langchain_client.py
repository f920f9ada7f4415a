"""Run by tests/mcp_server/test_agent_frameworks.py in a venv of its own (langchain-mcp-adapters
pins mcp<2): list the tools over HTTP, convert each to OpenAI's strict mode with langchain,
call generate_image with every optional field null, then with a bad field. Prints JSON."""

import asyncio
import json
import sys

from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_mcp_adapters.client import MultiServerMCPClient


async def main(url: str) -> None:
    client = MultiServerMCPClient({"diffusers": {"transport": "streamable_http", "url": url}})
    tools = {tool.name: tool for tool in await client.get_tools()}
    strict = {name: convert_to_openai_tool(tool, strict=True) for name, tool in tools.items()}
    generate = tools["generate_image"]
    args = dict.fromkeys(strict["generate_image"]["function"]["parameters"]["properties"])
    args |= {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 2}
    drawn = await generate.ainvoke(args)
    try:
        wrong = await generate.ainvoke({**args, "width": "wide"})
    except Exception as exc:  # langchain raises a tool error as an exception
        wrong = str(exc)
    print(
        json.dumps(
            {
                "strict": {n: t["function"].get("strict") for n, t in strict.items()},
                "drawn": str(drawn)[:2000],
                "wrong": str(wrong)[:500],
            }
        )
    )


asyncio.run(main(sys.argv[1]))
