"""Run in a fresh process by the tests: resume a session, optionally take one more turn, print the result.

argv[1] is JSON: {"base_url", "session_id", "api_key"?, "replies"?, "prompt"?}.
Prints one JSON line: {"messages": agent.messages, "state": agent.state.get()}.
"""

from __future__ import annotations

import json
import sys

from scripted_model import ScriptedModel, text
from strands import Agent

from session_gateway_strands import GatewaySessionManager


def main() -> None:
    args = json.loads(sys.argv[1])
    manager = GatewaySessionManager(args["session_id"], args["base_url"], args.get("api_key"))
    model = ScriptedModel([text(r) for r in args.get("replies", [])])
    agent = Agent(model=model, session_manager=manager, callback_handler=None)
    restored = json.loads(json.dumps(agent.messages))
    if args.get("prompt"):
        agent(args["prompt"])
    print(
        json.dumps(
            {"restored": restored, "messages": agent.messages, "state": agent.state.get(), "model_saw": model.calls}
        )
    )


if __name__ == "__main__":
    main()
