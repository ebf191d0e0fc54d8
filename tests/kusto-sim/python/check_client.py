"""Drives kusto-sim with the official Python client (azure-kusto-data).

Usage: check_client.py <cluster-url> <bearer-token>

It also uses kusto-sim's test-only control endpoint (`POST /kusto-sim/faults`) once, to make
the next query fail part-way, and checks that the client raises that error.

Exit code 0 and a last line "OK" when every check passed; otherwise a message saying which
check failed. The client parses every answer itself, so any deviation of the simulator's
wire format from what a real client expects shows up here.
"""

import datetime
import json
import sys
import urllib.request
import uuid
from decimal import Decimal

from azure.kusto.data import ClientRequestProperties, KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.exceptions import KustoApiError, KustoMultiApiError, KustoServiceError

DB = "db"


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    url, token = sys.argv[1], sys.argv[2]
    # An application token is used as is: no AAD round trip, and plain http is accepted.
    kcsb = KustoConnectionStringBuilder.with_aad_application_token_authentication(url, token)
    client = KustoClient(kcsb)

    # Management command (v1 answer).
    client.execute_mgmt(DB, ".drop table PyTypes ifexists")
    created = client.execute_mgmt(
        DB,
        ".create table PyTypes (b:bool, i:int, l:long, r:real, d:decimal, s:string, "
        "t:datetime, ts:timespan, g:guid, dyn:dynamic)",
    )
    table = created.primary_results[0]
    check(table.rows[0]["TableName"] == "PyTypes", "mgmt: .create table answers the table name")
    client.execute_mgmt(
        DB,
        ".ingest inline into table PyTypes <|\n"
        'true,42,9007199254740993,2.5,1.25,"hello, world",2024-02-03T04:05:06.123456Z,'
        '1.02:03:04.5,6f9619ff-8b86-d011-b42d-00c04fc964ff,"{""a"": [1, null]}"\n'
        ",,,,,,,,,",
    )
    tables = client.execute_mgmt(DB, ".show tables").primary_results[0]
    check(any(r["TableName"] == "PyTypes" for r in tables), "mgmt: .show tables lists the new table")
    extents = client.execute_mgmt(DB, ".show table PyTypes extents").primary_results[0]
    check(len(extents) == 1 and extents[0]["RowCount"] == 2, "mgmt: .show table extents counts rows")
    check(isinstance(extents[0]["MinCreatedOn"], datetime.datetime), "mgmt: datetimes parse as datetime")

    # v2 query with every scalar type, and nulls.
    result = client.execute_query(DB, "PyTypes | order by l desc nulls last")
    check(len(result.get_exceptions()) == 0, "v2: no errors reported in QueryCompletionInformation")
    rows = result.primary_results[0].rows
    check(len(rows) == 2, "v2: two rows")
    r = rows[0]
    check(r["b"] is True, "v2: bool")
    check(r["i"] == 42, "v2: int")
    check(r["l"] == 9007199254740993, "v2: long beyond 2^53 keeps its value")
    check(r["r"] == 2.5, "v2: real")
    check(r["d"] == Decimal("1.25"), "v2: decimal")
    check(r["s"] == "hello, world", "v2: string")
    check(
        r["t"] == datetime.datetime(2024, 2, 3, 4, 5, 6, 123456, tzinfo=datetime.timezone.utc),
        f"v2: datetime ({r['t']!r})",
    )
    check(r["ts"] == datetime.timedelta(days=1, hours=2, minutes=3, seconds=4.5), f"v2: timespan ({r['ts']!r})")
    check(str(r["g"]) == str(uuid.UUID("6f9619ff-8b86-d011-b42d-00c04fc964ff")), "v2: guid")
    check(r["dyn"] == {"a": [1, None]}, "v2: dynamic")
    nulls = rows[1]
    check(all(nulls[c] is None for c in ["b", "i", "l", "r", "d", "t", "ts", "g", "dyn"]), "v2: nulls of every type")
    check(nulls["s"] == "", "v2: an empty string cell stays an empty string")

    # The streaming API reads frames token by token: FrameType first, Columns before Rows.
    streamed = client.execute_streaming_query(DB, "PyTypes | order by l desc nulls last | project l, s, dyn")
    primary = next(streamed.iter_primary_results())
    streamed_rows = [row.to_list() for row in primary]
    check(streamed_rows[0] == [9007199254740993, "hello, world", {"a": [1, None]}], f"v2 streaming: rows parse ({streamed_rows[0]})")
    check(len(streamed_rows) == 2, "v2 streaming: every row")

    # Query parameters travel in ClientRequestProperties.
    props = ClientRequestProperties()
    props.set_parameter("wanted", "hello, world")
    props.set_option(ClientRequestProperties.request_timeout_option_name, datetime.timedelta(minutes=1))
    with_params = client.execute_query(
        DB, "declare query_parameters(wanted: string); PyTypes | where s == wanted | project i", props
    )
    check([r["i"] for r in with_params.primary_results[0]] == [42], "v2: declare query_parameters with a request parameter")

    summary = client.execute_query(DB, "PyTypes | summarize n = count(), m = max(t) | extend c = cursor_current()")
    row = summary.primary_results[0].rows[0]
    check(row["n"] == 2 and isinstance(row["c"], str), "v2: summarize and cursor_current()")

    # Errors: a semantic error is a KustoApiError carrying Kusto's error JSON.
    try:
        client.execute_query(DB, "NoSuchTable | take 1")
        check(False, "error: a query on a missing table must fail")
    except KustoApiError as e:
        err = e.get_api_error()
        check(err.code == "General_BadRequest", f"error: code is General_BadRequest ({err.code})")
        check("NoSuchTable" in err.description, "error: @message names the missing table")
        check(err.permanent is True, "error: @permanent is true")
        check(e.is_semantic_error(), "error: the client classifies it as a semantic error")
    try:
        client.execute_mgmt(DB, ".frobnicate")
        check(False, "error: an unknown command must fail")
    except KustoServiceError:
        check(True, "error: an unknown command raises KustoServiceError")

    # A partial query failure (200, error row, HasErrors) is raised by the client. The
    # simulator's test-only control endpoint injects it into the next query.
    fault = json.dumps({"kind": "Query", "fault": "PartialQueryFailure", "times": 1}).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/kusto-sim/faults",
        data=fault,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).read()
    try:
        client.execute_query(DB, "PyTypes | project l")
        check(False, "partial failure: the client must raise")
    except KustoMultiApiError as e:
        errors = e.get_api_errors()
        check(len(errors) == 1 and errors[0].code == "LimitsExceeded", f"partial failure: KustoMultiApiError with the error ({errors})")

    # A token for another audience is refused with 401.
    bad = KustoClient(KustoConnectionStringBuilder.with_aad_application_token_authentication(url, "e30.eyJhdWQiOiJodHRwczovL290aGVyIn0."))
    try:
        bad.execute_mgmt(DB, ".show tables")
        check(False, "auth: a token for another audience must be refused")
    except KustoServiceError as e:
        check("401" in str(e), f"auth: wrong audience answers 401 ({e})")

    print("OK")


if __name__ == "__main__":
    main()
