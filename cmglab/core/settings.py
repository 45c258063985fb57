"""Process settings: every option is also an environment variable with the prefix `CMGLAB_`.

The lab directory holds what the parts agree on (lab.json, PKI); these settings hold how one process
runs (where the lab is, which database, whether to check CRLs, limits and timeouts).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMGLAB_", extra="ignore")

    lab_dir: Path = Path(".cmglab")
    # bind address for listeners; the lab config's bind_address when unset
    bind: str | None = None
    # listen port of a single-listener service; its lab port when unset (a second instance of a service
    # on another address and port, e.g. Entra on <alias>:443 for unmodified clients that need port 443)
    listen_port: int | None = None
    # SQLAlchemy URL for this process' store; a SQLite file under <lab>/data when unset
    database_url: str | None = None
    # curl-style HOST:PORT:ADDR file for outbound calls; <lab>/hosts when unset (embedded lab)
    hosts_file: Path | None = None
    # check client certificates against the lab CRLs on listeners that take them
    crl_check: bool = True
    # the listener limits (to max_handshakes) take positive values only: 0 or less would refuse or close every
    # connection at once, so a typo in e.g. CMGLAB_IDLE_TIMEOUT stops the service at start instead (review 3)
    # largest request or reply body a service accepts or forwards (413 while reading, before any authentication)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # most chunks in one chunked request body (413 past it, while reading): each chunk costs the parser a Python
    # callback whatever its size (~4 us: a million one-byte chunks, 1 MB of body, were seconds of CPU)
    max_body_chunks: int = Field(default=4096, gt=0)
    # every listener: longest request line (414) and request head, request line and header fields (431)
    max_url_bytes: int = Field(default=16 * 1024, gt=0)
    max_header_bytes: int = Field(default=64 * 1024, gt=0)
    # seconds from a request head's first byte to its end (408; slowloris), and for a TLS handshake
    head_timeout: float = Field(default=20.0, gt=0)
    tls_handshake_timeout: float = Field(default=10.0, gt=0)
    # seconds an idle keep-alive connection is kept (IIS's connection timeout: 120 s, what a client of a real CMG
    # sees); `cmglab bench` section 5 raises it so that opening 20,000 connections does not outlast it
    idle_timeout: float = Field(default=120.0, gt=0)
    # per process, all listeners: open connections (past it the oldest still in its TLS handshake is dropped for a
    # newcomer; when none is, new ones are closed at once), and of them how many
    # may be in their TLS handshake (past it the oldest is dropped for the newcomer)
    max_connections: int = Field(default=20_000, gt=0)
    max_handshakes: int = Field(default=1_000, gt=0)
    # worker processes on one listener for the services whose state is in their database (Entra, MP, CRL host)
    workers: int = 1
    # with several workers, each pinned to a CPU of its own (its event loop and threads with it; runtime/workers.py)
    pin_workers: bool = True
    # how long the CMG waits for a connection point's reply, and the point for the MP
    upstream_timeout: float = 30.0
    # connection point <-> CMG channel heartbeat and reconnect backoff
    channel_heartbeat: float = 10.0
    channel_backoff_max: float = 10.0
    # how many request records /_lab/requests keeps
    request_log_size: int = 2000
    # uvicorn access log on stderr (off: the recorder and the product logs say it all)
    access_log: bool = False
    # OTLP/HTTP collector (e.g. http://localhost:4318): every recorded request is exported as a server span
    otlp_endpoint: str | None = None
    # seconds between the Entra service's Entra Connect sync cycles (lab AD computers -> hybrid devices; 0: none)
    entra_sync_interval: float = 1800.0
    # how often the lab console polls the cmglab.services' /_lab/requests
    console_poll_interval: float = 0.5
