"""`cmglab init --free-ports`: ports for a lab that runs beside another one."""

from __future__ import annotations

import socket
from contextlib import ExitStack

from cmglab.core.labconfig import Ports, save_config
from cmglab.runtime.lab import Lab


def pick_free_ports() -> Ports:
    """One port per listener, none of them listened on now (the kernel's pick, held until all are chosen
    so that no two are the same). A port chosen here can still be taken before the lab starts; the lab
    then says so, naming the port."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in Ports.model_fields]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in socks]
    return Ports(**dict(zip(Ports.model_fields, ports, strict=True)))


def use_ports(lab: Lab, ports: Ports) -> None:
    """Write `ports` to lab.json and map the lab's names to them in the hosts file."""
    lab.config.ports = ports
    save_config(lab.config, Lab.config_path(lab.dir))
    if not lab.config.compose:
        (lab.dir / "hosts").write_text("".join(f"{e}\n" for e in lab.loopback_resolve()))
