"""`hutch usage` (a table and a small terminal chart) and `hutch billing …`."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hutch.cli import _common as c
from hutch.services.pricing import format_dollars

billing = typer.Typer(help="Balance, credits, invoices and payment method.", no_args_is_help=True)
BAR_WIDTH = 40
GROUPS = ("day", "project", "sandbox", "size")


def _money(micros: Any) -> str:
    return format_dollars(int(micros))


def chart(items: list[dict[str, Any]], label: str = "key") -> Table:
    """Horizontal bars of cost per group (drawn with block characters, no plotting library)."""
    top = max((int(i["cost_micros"]) for i in items), default=0)
    t = Table(show_header=False, box=None, padding=(0, 1))
    t.add_column(label)
    t.add_column("bar")
    t.add_column("cost", justify="right")
    for i in items:
        cost = int(i["cost_micros"])
        eighths = round(cost * BAR_WIDTH * 8 / top) if top else 0
        bar = "█" * (eighths // 8) + (" ▏▎▍▌▋▊▉"[eighths % 8] if eighths % 8 else "")
        t.add_row(str(i[label]), Text(bar or "·", style="cyan"), _money(cost))
    return t


@c.handle_errors
def usage(
    group_by: Annotated[str, typer.Option("--by", help="day, project, sandbox or size.")] = "day",
    start: Annotated[str | None, typer.Option(help="ISO time (default: start of month).")] = None,
    end: Annotated[str | None, typer.Option(help="ISO time (default: now).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    csv_out: Annotated[bool, typer.Option("--csv", help="Every usage record as CSV.")] = False,
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Usage and cost so far, as a table and a bar chart."""
    if group_by not in GROUPS:
        raise typer.BadParameter(f"choose one of {', '.join(GROUPS)}", param_hint="--by")
    with c.admin_client(api_url, api_key) as h:
        if csv_out:
            typer.echo(h.usage_csv(start=start, end=end), nl=False)
            return
        report = h.usage(group_by, start=start, end=end, project_id=project)
        summary = h.billing_summary()
    if json_out:
        c.print_json({"usage": report, "summary": summary})
        return
    con = c.out_console()
    table = Table(title=f"usage by {group_by}", header_style="bold")
    for col in ("key", "seconds", "vCPU-s", "GiB-s", "tokens", "cost"):
        table.add_column(col, justify="left" if col == "key" else "right")
    for i in report["items"]:
        table.add_row(
            str(i["key"]),
            f"{Decimal(i['seconds']):.3f}",
            f"{Decimal(i['vcpu_seconds']):.3f}",
            f"{Decimal(i['gib_seconds']):.3f}",
            str(i["tokens"]),
            _money(i["cost_micros"]),
        )
    table.add_row("total", "", "", "", "", _money(report["total_micros"]), style="bold")
    con.print(table)
    if report["items"]:
        con.print(chart(report["items"]))
    con.print(
        f"period {summary['period']}: cost so far {_money(summary['cost_this_period_micros'])}, "
        f"balance {_money(summary['balance_micros'])}"
    )
    if summary.get("warning"):
        stop = f" (sandboxes stop at {summary['stop_at']})" if summary.get("stop_at") else ""
        c.err_console().print(f"[yellow]warning: {summary['warning']}{stop}[/yellow]")


@billing.command("summary")
@c.handle_errors
def billing_summary(
    api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False
) -> None:
    """Balance, cost so far this month, payment method, warnings."""
    with c.admin_client(api_url, api_key) as h:
        s = h.billing_summary()
    if json_out:
        c.print_json(s)
        return
    rows = [{"field": k, "value": v} for k, v in s.items() if k != "events"]
    c.print_table(rows, ("field", "value"))
    c.print_table(s["events"], ("at", "type", "detail"), title="events")


@billing.command("credits")
@c.handle_errors
def billing_credits(
    api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False
) -> None:
    """Credit grants and what is left of them."""
    with c.admin_client(api_url, api_key) as h:
        grants = h.credits()
    if json_out:
        c.print_json(grants)
        return
    for g in grants:
        g["amount"], g["left"] = _money(g["amount_micros"]), _money(g["remaining_micros"])
    c.print_table(
        grants, ("grant_id", "kind", "amount", "left", "priority", "expires_at", "active")
    )


@billing.command("invoices")
@c.handle_errors
def billing_invoices(
    api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False
) -> None:
    """Invoices (the current month's upcoming one first)."""
    with c.admin_client(api_url, api_key) as h:
        invoices = h.invoices()
    if json_out:
        c.print_json(invoices)
        return
    for i in invoices:
        i["subtotal"], i["total"] = _money(i["subtotal_micros"]), _money(i["total_micros"])
    c.print_table(invoices, ("invoice_id", "period", "status", "subtotal", "total"))


@billing.command("setup")
@c.handle_errors
def billing_setup(
    api_url: c.ApiUrl = None, api_key: c.ApiKey = None, json_out: c.Json = False
) -> None:
    """Add a payment method: prints the link to open."""
    with c.admin_client(api_url, api_key) as h:
        answer = h.setup_payment()
    if json_out:
        c.print_json(answer)
    else:
        typer.echo(answer["url"] or answer["detail"])


@billing.command("grant")
@c.handle_errors
def billing_grant(
    team_id: Annotated[str, typer.Argument(help="The team to credit.")],
    amount: Annotated[str, typer.Argument(help="Dollars, e.g. 25 or 12.50.")],
    kind: Annotated[str, typer.Option(help="promotional or paid.")] = "promotional",
    expires_at: Annotated[str | None, typer.Option(help="ISO time it expires.")] = None,
    priority: Annotated[int, typer.Option(help="Lower is drawn first.")] = 100,
    reason: Annotated[str, typer.Option(help="Shown with the grant.")] = "credit",
    api_url: c.ApiUrl = None,
    api_key: c.ApiKey = None,
    json_out: c.Json = False,
) -> None:
    """Give a team credit (server administrators)."""
    extra: dict[str, Any] = {"kind": kind, "priority": priority, "reason": reason}
    if expires_at:
        extra["expires_at"] = expires_at
    with c.admin_client(api_url, api_key) as h:
        g = h.grant_credit(team_id, amount, **extra)
    if json_out:
        c.print_json(g)
    else:
        typer.echo(f"{g['grant_id']}: {_money(g['amount_micros'])}")
