#!/usr/bin/env python3
"""Writes an import file of N six-field subjects (name, id_number, phone, email, address,
bank_card): CSV with a header row, or JSON lines. Usage: gen.py csv|jsonl N OUT"""
import datetime
import json
import sys

fmt, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
W = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
START = datetime.date(1960, 1, 1)


def id_number(n):
    day = START + datetime.timedelta(days=n % 15000)
    body = "110105" + day.strftime("%Y%m%d") + "%03d" % (n % 1000)
    s = sum(int(d) * x for d, x in zip(body, W))
    return body + "10X98765432"[s % 11]


with open(out, "w", encoding="utf-8") as f:
    if fmt == "csv":
        f.write("name,id_number,phone,email,address,bank_card\n")
    for n in range(1, count + 1):
        row = {"name": "导入用户%d" % n, "id_number": id_number(n), "phone": "13%09d" % n,
               "email": "import%d@example.com" % n, "address": "上海市浦东新区世纪大道%d号" % (n % 2000),
               "bank_card": "6222021234567894"}
        if fmt == "csv":
            f.write(",".join(row.values()) + "\n")
        else:
            f.write(json.dumps({"fields": row}, ensure_ascii=False) + "\n")
