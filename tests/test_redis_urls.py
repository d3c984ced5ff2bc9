"""REDIS_URL's forms: a server, or a Sentinel group in kombu's form, for redis-py's clients and for kombu."""

from __future__ import annotations

import time

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

from cli.broker_wait import BrokerUnreachable, wait_for_broker
from config import SettingsError, load_settings
from config.redis_urls import SentinelUrl, async_client, parse_sentinel_url, sync_client
from tasks.celery_app import create_celery
from tasks.envelope import is_redis_url
from tests.stack import free_port


def test_a_plain_url_is_redis_pys_from_url() -> None:
    client = sync_client("redis://:secret@127.0.0.1:6390/2", decode_responses=True, socket_timeout=3)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("127.0.0.1", 6390, 2, "secret")
    assert kwargs["decode_responses"] is True and kwargs["socket_timeout"] == 3
    client.close()


def test_several_sentinels_with_db_and_master_name() -> None:
    url = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://h3/4?master_name=speechq"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("h3", 26379)), master_name="speechq", db=4
    )


def test_a_password_on_any_part_is_the_masters_and_is_unquoted() -> None:
    url = "sentinel://:p%40ss@h1:26379;sentinel://:p%40ss@h2:26379/0?master_name=m"
    target = parse_sentinel_url(url)
    assert (target.username, target.password, target.db) == (None, "p@ss", 0)
    assert parse_sentinel_url("sentinel://app:pw@h1?master_name=m").username == "app"


def test_the_master_name_missing_is_named() -> None:
    with pytest.raises(SettingsError, match="master_name") as caught:
        parse_sentinel_url("sentinel://h1:26379;sentinel://h2:26379/0")
    assert "master group" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sentinel://h1?master_name=a;sentinel://h2?master_name=b", "master_name more than once"),
        ("sentinel://h1/1;sentinel://h2/2?master_name=m", "db more than once"),
        ("sentinel://:a@h1;sentinel://:b@h2?master_name=m", "password more than once"),
        ("sentinel://h1;redis://h2?master_name=m", "starts sentinel://, not 'redis'"),
        ("sentinel://h1/zero?master_name=m", "db must be a number"),
        ("sentinel://h1:port?master_name=m", "port is not a number"),
        ("sentinel://h1?master_name=m&service=x", "only master_name"),
        ("sentinel://?master_name=m", "names no host"),
    ],
)
def test_a_bad_sentinel_url_says_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem):
        parse_sentinel_url(url)


def test_disagreeing_passwords_are_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_sentinel_url("sentinel://:first-secret@h1;sentinel://:second-secret@h2?master_name=m")
    assert "secret" not in str(caught.value)


def test_sentinel_clients_ask_the_sentinels_for_the_master() -> None:
    url = "sentinel://:pw@127.0.0.1:26379;sentinel://127.0.0.1:26380/3?master_name=speechq"
    client = sync_client(url, decode_responses=True, socket_connect_timeout=2)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "speechq"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["decode_responses"] is True
    connection = pool.make_connection()
    assert isinstance(connection, SentinelManagedConnection)
    assert connection.retry.get_retries() == 10, "a command retries while the master fails over"
    assert [s.connection_pool.connection_kwargs["port"] for s in pool.sentinel_manager.sentinels] == [26379, 26380]
    client.close()
    assert isinstance(async_client(url).connection_pool, AsyncSentinelPool)


def test_kombu_gets_the_master_name_db_and_password_of_a_sentinel_broker() -> None:
    url = "sentinel://h1:26379;sentinel://:pw@h2:26380/3?master_name=speechq"
    assert is_redis_url(url)  # the job store's Lua pushes the broker message itself
    app = create_celery(load_settings(redis_url=url))
    assert app.conf.broker_transport == "tasks.redis_transport:SentinelTransport"
    assert app.conf.broker_transport_options["master_name"] == "speechq"
    connection = app.connection_for_write()
    assert connection.alt == ["sentinel://:pw@h1:26379/3", "sentinel://:pw@h2:26380/3"]
    assert (connection.virtual_host, connection.password) == ("3", "pw")
    connection.switch(connection.alt[1])  # kombu's move to the next part after a failed connection
    assert (connection.hostname, connection.virtual_host, connection.password) == ("h2", "3", "pw")


def test_a_sentinel_url_without_master_name_stops_the_start_at_once_without_passwords() -> None:
    url = "sentinel://:hunter2@127.0.0.1:1;sentinel://:hunter2@127.0.0.1:2/0"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable, match="master_name") as caught:
        wait_for_broker(load_settings(redis_url=url))
    assert time.monotonic() - started < 1 and "hunter2" not in str(caught.value)


def test_unreachable_sentinels_are_waited_for_and_named_without_passwords() -> None:
    url = f"sentinel://:hunter2@127.0.0.1:{free_port()};sentinel://:hunter2@127.0.0.1:{free_port()}/0?master_name=m"
    settings = load_settings(redis_url=url, broker_connect_timeout_seconds=0.5)
    with pytest.raises(BrokerUnreachable, match="did not answer") as caught:
        wait_for_broker(settings, retry_seconds=0.1)
    assert "hunter2" not in str(caught.value) and str(caught.value).count("sentinel://") == 2
