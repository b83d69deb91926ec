"""The Lua scripts of ``store/lua``: read once, joined with ``lib.lua``, registered for EVALSHA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LUA_DIR = Path(__file__).with_name("lua")
NAMES = ("cart_create", "cart_items", "payment_start", "payment_settle", "retain")


def source(name: str) -> str:
    """The full text sent to Redis: the shared helpers, then the script itself."""
    return (LUA_DIR / "lib.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()


@dataclass(frozen=True)
class Scripts:
    cart_create: AsyncScript
    cart_items: AsyncScript
    payment_start: AsyncScript
    payment_settle: AsyncScript
    retain: AsyncScript

    @classmethod
    def register(cls, client: Redis) -> Scripts:
        return cls(**{name: client.register_script(source(name)) for name in NAMES})

    async def load(self, client: Redis, names: tuple[str, ...] = NAMES) -> None:
        """SCRIPT LOAD each script (or those ``names``), so a syntax error fails the start,
        not a request."""
        for name in names:
            script: Any = getattr(self, name)
            sha = await client.script_load(script.script)
            if sha != script.sha:
                raise RuntimeError(
                    f"script {name}: Redis returned sha {sha}, expected {script.sha}"
                )
