#!/usr/bin/env python3
"""Seeds N subjects over HTTPS (n = 1..N carry the ID number common.lua derives from n)
and writes their ids, in order, one per line. Usage: seed.py BASE CA TOKEN N OUT"""
import concurrent.futures
import datetime
import http.client
import json
import ssl
import sys
import threading

base, ca, token, count, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
host, port = base.split("://")[1].split(":")
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
local = threading.local()


def id_number(n):
    day = datetime.datetime(1980, 1, 1) + datetime.timedelta(days=n % 10000)
    body = "110105" + day.strftime("%Y%m%d") + "%03d" % (n % 1000)
    w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    s = sum(int(d) * x for d, x in zip(body, w))
    return body + "10X98765432"[s % 11]


def create(n):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPSConnection(host, int(port), context=ctx)
    body = json.dumps({"fields": {
        "name": "压测用户", "id_number": id_number(n), "phone": "138%08d" % n,
        "email": "seed%d@example.com" % n, "address": "上海市浦东新区世纪大道100号",
        "bank_card": "6222021234567894", "tier": "gold"}})
    local.conn.request("POST", "/v1/subjects", body, {
        "Authorization": "Bearer " + token, "X-Purpose": "dsr",
        "Content-Type": "application/json"})
    resp = local.conn.getresponse()
    data = resp.read()
    if resp.status != 201:
        raise SystemExit("seeding failed: %d %s" % (resp.status, data[:200]))
    return json.loads(data)["id"]


with concurrent.futures.ThreadPoolExecutor(8) as pool:
    ids = list(pool.map(create, range(1, count + 1)))
with open(out, "w") as f:
    f.write("\n".join(ids) + "\n")
