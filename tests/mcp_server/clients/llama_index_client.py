"""Run by tests/mcp_server/test_agent_frameworks.py in a venv of its own (llama-index-core is
large): list the tools over HTTP as llama-index tools, describe each as an OpenAI tool, call
generate_image with every optional field null, then with a bad field. Prints JSON."""

import asyncio
import json
import sys

from llama_index.tools.mcp import BasicMCPClient, McpToolSpec


async def main(url: str) -> None:
    tools = {
        tool.metadata.name: tool
        for tool in await McpToolSpec(client=BasicMCPClient(url)).to_tool_list_async()
    }
    described = {name: tool.metadata.to_openai_tool() for name, tool in tools.items()}
    properties = described["generate_image"]["function"]["parameters"]["properties"]
    args = dict.fromkeys(properties)
    args |= {"prompt": "a red circle", "width": 64, "height": 64, "num_inference_steps": 2}
    drawn = await tools["generate_image"].acall(**args)
    wrong = await tools["generate_image"].acall(**{**args, "width": "wide"})
    print(
        json.dumps(
            {
                "tools": sorted(described),
                "drawn": str(drawn.raw_output)[:2000],
                "wrong": str(wrong.raw_output)[:500],
            }
        )
    )


asyncio.run(main(sys.argv[1]))
