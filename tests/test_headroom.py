"""Admission control's decisions, on injected CPU readings and clock lateness."""

from __future__ import annotations

import logging

from gateway.core.headroom import Admission, AdmissionConfig, cgroup_cpu_limit


class FakeProcess:
    def __init__(self) -> None:
        self.t = 0.0
        self.cpu = 0.0
        self.load = 0
        self.late: list[float] = []

    def run(self, admission: Admission, seconds: float, share: float, cores: float) -> None:
        """``seconds`` of wall time using ``share`` of ``cores``, sampled every 0.25 s."""
        for _ in range(round(seconds / 0.25)):
            self.t += 0.25
            self.cpu += 0.25 * share * cores
            admission.sample()


def admission(proc: FakeProcess, cores: float = 0.5, **config) -> Admission:
    return Admission(AdmissionConfig(**config), lateness=lambda: proc.late,
                     load=lambda: proc.load, cpu_seconds=lambda: proc.cpu,
                     cores=lambda: cores, now=lambda: proc.t)


def test_admits_below_the_cpu_limit_and_refuses_above_it(caplog):
    proc = FakeProcess()
    adm = admission(proc, cpu_limit=0.8)
    proc.load = 10
    proc.run(adm, 2.0, share=0.5, cores=0.5)
    assert adm.admit("webrtc_listen") is None
    caplog.set_level(logging.INFO)
    proc.run(adm, 2.0, share=0.9, cores=0.5)
    refusals = [adm.admit("webrtc_listen") for _ in range(5)] + [adm.admit("sip")]
    assert all(r is not None and r.retry_after_s == 5 for r in refusals)
    assert "CPU at 90% of the 0.5 cores" in refusals[0].reason
    assert adm.refused == {"webrtc_publish": 0, "webrtc_listen": 5, "rtp_output": 0,
                           "recording": 0, "dial_out": 0, "sip": 1}
    assert caplog.text.count("overloaded") == 1  # once per episode, not per refusal
    proc.run(adm, 2.0, share=0.5, cores=0.5)  # load went away
    assert adm.admit("webrtc_listen") is None and not adm.refusing
    assert "admitting again after 6 refusals" in caplog.text


def test_a_burst_between_two_samples_cannot_overshoot():
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, cpu_limit=0.8)
    proc.load = 20
    proc.run(adm, 2.0, share=0.6, cores=1.0)  # 3 % of the core per session
    admitted = sum(adm.admit("webrtc_listen") is None for _ in range(50))
    assert admitted == 7  # 0.6 + 7 * 0.03 = 0.81: the 8th would pass the limit
    proc.run(adm, 0.25, share=0.6, cores=1.0)  # the next sample starts a new estimate
    assert adm.admit("webrtc_listen") is None


def test_a_cpu_peak_while_sessions_set_up_is_busy_not_full():
    """Set-up (ICE, DTLS) costs more than playing: a peak right after admissions is
    answered with a short Retry-After, and capacity is judged by the steady cost."""
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, cpu_limit=0.8)
    proc.load = 20
    proc.run(adm, 2.0, share=0.2, cores=1.0)  # steady: 1 % of the core per session
    assert adm.session_share == 0.01
    for _ in range(10):
        assert adm.admit("webrtc") is None
    proc.load = 30
    proc.run(adm, 1.0, share=0.95, cores=1.0)  # ten handshakes at once
    busy = adm.admit("webrtc")
    assert busy is not None and busy.retry_after_s == 1 and "busy setting up" in busy.reason
    assert adm.session_share == 0.01  # the peak taught nothing about the steady cost
    proc.run(adm, 3.0, share=0.3, cores=1.0)  # they play: 30 % for 30 sessions
    assert adm.admit("webrtc") is None


def test_past_the_steady_capacity_a_refusal_is_full_even_while_setting_up():
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, cpu_limit=0.805)
    proc.load = 70
    proc.run(adm, 2.0, share=0.7, cores=1.0)
    admitted = 0
    while adm.admit("webrtc") is None:
        admitted += 1
    assert admitted == 11  # each checked with what is admitted before it: 80 at 1 % pass
    proc.load = 85  # and five SIP calls came in by another door
    proc.run(adm, 0.5, share=1.0, cores=1.0)
    full = adm.admit("webrtc")
    assert full is not None and full.retry_after_s == 5 and "CPU at 85%" in full.reason


def test_a_late_media_clock_refuses_even_with_cpu_left():
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, lateness_limit_ms=10)
    proc.run(adm, 1.0, share=0.2, cores=1.0)
    proc.late = [0.001] * 45 + [0.030] * 5  # 10 % of ticks 30 ms late
    refusal = adm.admit("rtp_output")
    assert refusal is not None and "30 ms late" in refusal.reason
    assert refusal.retry_after_s == 5
    proc.late = [0.001] * 50
    assert adm.admit("rtp_output") is None
    proc.late = [0.001] * 45 + [0.030] * 5  # late right after an admission: set-up work
    busy = adm.admit("webrtc")
    assert busy is not None and busy.retry_after_s == 1 and "busy setting up" in busy.reason


def test_disabled_admits_everything():
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, enabled=False)
    proc.run(adm, 1.0, share=1.0, cores=1.0)
    assert adm.admit("webrtc_listen") is None


def test_cgroup_quota_v1_and_v2(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "box").mkdir(parents=True)
    (v1 / "cpu" / "box" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "box" / "cpu.cfs_period_us").write_text("100000\n")
    proc1 = tmp_path / "cgroup1"
    proc1.write_text("4:memory:/x\n2:cpuacct:/\n1:cpu:/box\n0::/\n")
    assert cgroup_cpu_limit(v1, proc1) == 0.5
    (v1 / "cpu" / "box" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, proc1) is None

    v2 = tmp_path / "v2"
    (v2 / "ctr").mkdir(parents=True)
    (v2 / "ctr" / "cpu.max").write_text("25000 100000\n")
    proc2 = tmp_path / "cgroup2"
    proc2.write_text("0::/ctr\n")
    assert cgroup_cpu_limit(v2, proc2) == 0.25
    (v2 / "ctr" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, proc2) is None


def test_hovering_at_the_limit_is_one_episode(caplog):
    """Over and under the limit sample after sample: one episode, one log line."""
    caplog.set_level(logging.INFO)
    proc = FakeProcess()
    adm = admission(proc, cores=1.0, lateness_limit_ms=10)
    proc.run(adm, 2.0, share=0.3, cores=1.0)
    for i in range(12):
        proc.late = [0.030] * 50 if i % 2 == 0 else [0.001] * 50
        proc.run(adm, 0.25, share=0.3, cores=1.0)
        adm.admit("sip")
    assert adm.episodes == 1 and caplog.text.count("overloaded") == 1
    proc.run(adm, 1.25, share=0.3, cores=1.0)
    assert not adm.refusing and "admitting again after 6 refusals" in caplog.text


def test_a_quota_lowered_at_run_time_is_followed_and_what_was_learnt_keeps_its_cpu_time():
    """``docker update --cpus``: the same CPU time is a larger share of a smaller quota."""
    proc = FakeProcess()
    cores = {"now": 1.0}
    adm = Admission(AdmissionConfig(cpu_limit=0.8), lateness=lambda: proc.late,
                    load=lambda: proc.load, cpu_seconds=lambda: proc.cpu,
                    cores=lambda: cores["now"], now=lambda: proc.t)
    proc.run(adm, 3.0, share=0.05, cores=1.0)  # idle: 0.05 core
    proc.load = 10
    proc.run(adm, 3.0, share=0.15, cores=1.0)  # 0.01 core per session
    assert adm.admit("webrtc_listen") is None
    adm.sample()
    idle, per_session = adm.idle_share, adm.session_share
    cores["now"] = 0.2  # the same 0.15 core is now 75 % of what the process may use
    proc.run(adm, 1.0, share=0.75, cores=0.2)
    assert adm.cores_available == 0.2
    assert abs(adm.idle_share - 5 * idle) < 1e-9  # no steady window since: only rescaled
    assert abs(adm.session_share - 5 * per_session) < 1e-9
    admitted = sum(adm.admit("webrtc_listen") is None for _ in range(5))
    assert admitted < 5  # at 0.75 of the new quota, about 0.05 a session: one or two
    refusal = adm.admit("webrtc_listen")
    assert refusal is not None and "of the 0.2 cores" in refusal.reason
