"""Which servers a client talks to: the gRPC target for one or several addresses, and the channel's service config
(retries and the load-balancing policy). No grpc import here, so the command line can name the choices cheaply."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from enum import Enum
from typing import Any

SERVICE_NAME = "gamjeong.v1.EmotionClassifier"


class LoadBalancing(str, Enum):
    """gRPC's client-side load-balancing policies. pick_first (gRPC's default): one connection, to the first address
    that answers. round_robin: a connection to every address, calls spread over the ready ones."""

    PICK_FIRST = "pick_first"
    ROUND_ROBIN = "round_robin"


def service_config(max_attempts: int = 5, load_balancing: LoadBalancing | str | None = None) -> str | None:
    """The channel's gRPC service config: retries of UNAVAILABLE with backoff (max_attempts > 1) and the
    load-balancing policy; None when there is nothing to configure."""
    config: dict[str, Any] = {}
    if max_attempts > 1:
        config["methodConfig"] = [
            {
                "name": [{"service": SERVICE_NAME}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    if load_balancing is not None:
        config["loadBalancingConfig"] = [{LoadBalancing(load_balancing).value: {}}]
    return json.dumps(config) if config else None


def retry_service_config(max_attempts: int = 5) -> str:
    """gRPC service config that retries UNAVAILABLE calls of the classifier with exponential backoff."""
    return service_config(max(max_attempts, 2)) or ""


def channel_target(target: str | Sequence[str]) -> str:
    """A gRPC target for one address, a name ("dns:///name:port"), or several "host:port" addresses.

    Several addresses (a list, or one comma-separated string) must be IP literals: gRPC's resolvers take a list only
    as "ipv4:a:p,b:p" or "ipv6:[a]:p,[b]:p". For several servers behind one name, use a DNS name that resolves to
    all of them (a Kubernetes headless service) as "dns:///name:port".
    """
    addresses = [target] if isinstance(target, str) else list(target)
    one = addresses[0] if len(addresses) == 1 else ""
    if "," in one and ":///" not in one and not one.startswith(("ipv4:", "ipv6:")):  # "a:1,b:2"
        addresses = [a.strip() for a in one.split(",") if a.strip()]
    if len(addresses) == 1:
        return addresses[0]
    if not addresses:
        raise ValueError("No server address given.")
    families = set()
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"'{address}' is not an IP:port address; several servers need IP addresses, or one DNS name that "
                "resolves to all of them given as dns:///NAME:PORT (a Kubernetes headless service)."
            ) from None
        if not port.isdigit():
            raise ValueError(f"'{address}' has no port; write HOST:PORT.")
    if len(families) > 1:
        raise ValueError("Mix of IPv4 and IPv6 addresses: gRPC takes one family per target.")
    return ("ipv4:" if families == {4} else "ipv6:") + ",".join(addresses)
