"""Drives hangar's MCP server with the Python MCP SDK, as a third-party client would.

Usage: mcp_client.py stdio|http APP MACHINE
Environment: HANGAR_API, HANGAR_TOKEN, HANGAR_BIN. Exits non-zero on the first
failed expectation, printing what differed.
"""

import asyncio
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


async def drive(session, app, machine):
    await session.initialize()
    tools = (await session.list_tools()).tools
    expect(10 <= len(tools) <= 14, f"10-14 tools, got {len(tools)}")
    for tool in tools:
        expect(tool.outputSchema is not None, f"{tool.name} has an outputSchema")
        expect(tool.annotations is not None and tool.annotations.readOnlyHint is not None,
               f"{tool.name} has annotations")

    # Results are validated against each tool's outputSchema by the SDK itself.
    args = {"app": app, "machine": machine}
    r = await session.call_tool("file_write", {**args, "path": "/root/py.txt", "content": "from python\n"})
    expect(not r.isError, f"file_write: {r.content}")
    r = await session.call_tool("exec", {**args, "command": ["cat", "/root/py.txt"]})
    expect(not r.isError and r.structuredContent["stdout"] == "from python\n", f"exec: {r}")
    r = await session.call_tool("exec", {**args, "command": ["sh", "-c", "exit 7"]})
    expect(not r.isError and r.structuredContent["exit_code"] == 7, f"non-zero exit is data: {r}")

    r = await session.call_tool("exec", {**args, "command": ["sh", "-c", "yes abcdefgh | head -c 10000000"]})
    s = r.structuredContent
    expect(s["stdout_truncated"] and len(s["stdout"]) < 20000 and "bytes cut" in s["stdout"],
           "10 MB comes back truncated with a marker")

    r = await session.call_tool("exec", {**args, "command": ["sleep", "300"], "background": True})
    job = r.structuredContent["job"]
    expect(r.structuredContent["state"] == "running", "a long command returns a job")
    r = await session.call_tool("job_poll", {**args, "job": job})
    expect(r.structuredContent["state"] == "running", "the job can be polled")
    r = await session.call_tool("job_control", {**args, "job": job, "action": "cancel"})
    expect(r.structuredContent["state"] == "cancelled", "the job can be cancelled")

    # Input to a running job: sent as it is needed, closed with eof.
    r = await session.call_tool("exec", {**args, "command": ["sh", "-c", "read x; echo got:$x; exec cat"],
                                         "stdin_open": True})
    job = r.structuredContent["job"]
    expect(r.structuredContent["state"] == "running", f"stdin_open returns a job: {r}")
    r = await session.call_tool("job_control", {**args, "job": job, "action": "stdin", "stdin": "py\n"})
    expect(not r.isError, f"stdin is sent: {r}")
    for _ in range(200):
        r = await session.call_tool("job_poll", {**args, "job": job})
        if r.structuredContent["stdout"] == "got:py\n":
            break
        await asyncio.sleep(0.05)
    expect(r.structuredContent["stdout"] == "got:py\n", f"the job answers its input: {r}")
    r = await session.call_tool("job_control", {**args, "job": job, "action": "stdin", "stdin": "end\n", "eof": True})
    expect(not r.isError, f"eof is sent: {r}")
    r = await session.call_tool("job_poll", {**args, "job": job, "wait_secs": 20})
    s = r.structuredContent
    expect(s["state"] == "exited" and s["exit_code"] == 0 and s["stdout"] == "got:py\nend\n",
           f"cat ends at end of file: {r}")

    r = await session.call_tool("exec", {**args, "command": ["nosuchcommand"]})
    expect(not r.isError or r.structuredContent.get("code"), f"a missing binary is reported: {r}")

    r = await session.call_tool("exec", {"app": app + "-nope", "machine": machine, "command": ["true"]})
    expect(r.isError and r.structuredContent["code"] in ("machine_not_found", "app_not_found"),
           f"another app's machine is not found: {r}")
    r = await session.call_tool("file_write", {**args, "path": "/root/big", "content": "x" * (9 << 20)})
    expect(r.isError and r.structuredContent["code"] == "payload_too_large", "oversized write refused")

    for bad in [("no_such_tool", {}), ("exec", {**args, "command": "ls"}), ("exec", args)]:
        try:
            r = await session.call_tool(*bad)
            expect(r.isError, f"{bad[0]} with bad input is an error")
        except Exception:
            pass  # a JSON-RPC error, as the spec asks
    r = await session.call_tool("exec", {**args, "command": ["true"]})
    expect(not r.isError and r.structuredContent["exit_code"] == 0, "the server keeps serving")

    guide = await session.read_resource("hangar://guide")
    expect("checkpoint" in guide.contents[0].text, "the guide is served")


async def main():
    transport, app, machine = sys.argv[1:4]
    if transport == "stdio":
        params = StdioServerParameters(command=os.environ["HANGAR_BIN"], args=["mcp"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await drive(session, app, machine)
    else:
        url = f"http://{os.environ['HANGAR_API']}/mcp"
        headers = {"Authorization": f"Bearer {os.environ['HANGAR_TOKEN']}"}
        async with streamablehttp_client(url, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await drive(session, app, machine)
    print("ok")


asyncio.run(main())
