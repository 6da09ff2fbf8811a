"""The process's one deadline thread: alarms fire in deadline order, cancelled ones
never, a failing callback spoils no other, and a forked child gets a working one."""

import os
import threading
import time

from function import watchdog


def _recorder():
    fired: list[str] = []
    done = threading.Event()
    return fired, done


def test_alarms_fire_in_deadline_order_not_in_the_order_set():
    fired, done = _recorder()
    started = time.monotonic()
    at: dict[str, float] = {}
    watchdog.after(0.30, lambda: (fired.append("late"), at.setdefault("late", time.monotonic()), done.set()))
    # sooner than what the thread already waits for: it must wake for this one
    watchdog.after(0.05, lambda: (fired.append("soon"), at.setdefault("soon", time.monotonic())))
    assert done.wait(5)
    assert fired == ["soon", "late"]
    assert at["soon"] - started < 0.2
    assert at["late"] - started >= 0.29


def test_a_cancelled_alarm_never_fires_and_lets_go_of_its_callback():
    fired, done = _recorder()
    alarm = watchdog.after(0.05, lambda: fired.append("cancelled"))
    alarm.cancel()
    assert alarm.callback is None
    watchdog.after(0.15, done.set)
    assert done.wait(5)
    assert fired == []


def test_a_failing_callback_leaves_the_others_on_time(caplog):
    fired, done = _recorder()

    def boom():
        raise RuntimeError("boom")

    watchdog.after(0.01, boom)
    watchdog.after(0.05, lambda: (fired.append("after"), done.set()))
    assert done.wait(5)
    assert fired == ["after"]
    assert "a deadline's callback failed" in caplog.text


def test_many_deadlines_share_one_thread():
    before = threading.active_count()
    alarms = [watchdog.after(60, lambda: None) for _ in range(200)]
    assert threading.active_count() <= before + 1
    assert [t.name for t in threading.enumerate()].count("watchdog") == 1
    for alarm in alarms:
        alarm.cancel()


def test_a_forked_child_has_a_working_watchdog():
    watchdog.after(60, lambda: None).cancel()  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's threads run here
        fired = threading.Event()
        watchdog.after(0.05, fired.set)
        os._exit(0 if fired.wait(5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
