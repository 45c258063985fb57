"""The CMG's own refusals, answered as JSON `{"Error": <code>, "Reason": <text>}` (the shape the
site's CCM_STS uses) and written to CMGService.log."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class CMGError(Exception):
    def __init__(self, status: int, code: str, reason: str, **extra: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason, self.extra = status, code, reason, extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"Error": self.code, "Reason": self.reason, **self.extra}, status_code=self.status,
                            headers=headers)


def not_found(path: str) -> CMGError:
    return CMGError(404, "NotFound", f"{path} is not a URL this cloud management gateway publishes")


def no_point() -> CMGError:
    return CMGError(503, "NoConnectionPoint", "no CMG connection point is connected to this gateway")
