import json
from tests.integration.conftest import auth
from service.auth import mint_token

async def test_probe(api):
    for path in ["/v1/users/a%2Fb/status", "/v1/users/a%20b/status", "/v1/users/%C3%A9/status", "/v1/users/" + "a"*65 + "/status", "/v1/users/a%2Fb/buddies/c"]:
        r = await api.get(path, headers=auth())
        print(path, r.status, await r.text())
    r = await api.post("/v1/users/a/status", headers=auth()); print("405", r.status, r.headers, await r.text())
    r = await api.get("/nope"); print(r.status, await r.text())
    r = await api.put("/v1/users/bob/status", headers=auth(), json={"text": "hi"}); print(r.status, await r.text())
    r = await api.get("/v1/users/bob/status", headers=auth()); print(r.status, await r.text())
    ws = await api.ws_connect("/v1/ws?token=" + mint_token("alice", "x"*32))
    print(await ws.receive(timeout=2)); print(await ws.receive(timeout=2))
    try:
        print(await ws.receive(timeout=0.3))
    except TimeoutError as e:
        print("timeout", type(e))
    await ws.send_str(json.dumps({"op": "ping", "ref": "a"}))
    print(await ws.receive(timeout=2))
    await ws.close()
