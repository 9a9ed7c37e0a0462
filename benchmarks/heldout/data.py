"""Synthetic sensor data for the held-out benchmark (numpy only, deterministic by seed).

Written for issue 29, separately from benchmarks/models/data.py (the repository's tuned models), so
that nothing here was shaped by earlier tuning. Every generator has the signature
`(n, seed, **params) -> (x float32 (n, steps, channels), y)`; y is int64 class labels, or float32
targets for the regression tasks. Units are those of the sensor unless a generator says it
normalizes: the raw scales (gravity on an accelerometer, ADC offsets) are part of what is measured.
Class differences are kept partial (faint faults, overlapping cadences, strong noise) so a small
float model lands below 100%.
"""

from __future__ import annotations

import numpy as np

Data = tuple[np.ndarray, np.ndarray]


def _znorm(x: np.ndarray) -> np.ndarray:
    """Per-sample, per-channel z-normalization, as univariate-series pipelines ship it."""
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True) + 1e-6
    return (x - mean) / std


def _lowpass_noise(rng: np.random.Generator, shape: tuple[int, ...], keep: float) -> np.ndarray:
    """Gaussian noise whose spectrum keeps the lowest `keep` fraction of bins (axis 1)."""
    spec = np.fft.rfft(rng.standard_normal(shape), axis=1)
    spec[:, max(1, int(keep * spec.shape[1])):] = 0
    out = np.fft.irfft(spec, n=shape[1], axis=1)
    return out / (out.std(axis=1, keepdims=True) + 1e-9)


def bearing_vibration(n: int, seed: int, steps: int = 512, axes: int = 1, fs: float = 4096.0,
                      noise_g: float = 0.15) -> Data:
    """Rolling-bearing acceleration in g: 0 healthy, 1 outer race, 2 inner race, 3 ball fault.

    Shaft speed varies per window (22-28 Hz). A fault is a train of impacts at its characteristic
    frequency (BPFO 3.05x, BPFI 4.95x, BSF 2.0x shaft speed, with slip jitter) ringing a structural
    resonance that depends on the transmission path (outer race highest, ball lowest); inner-race impacts are amplitude-modulated at shaft speed (sidebands), ball impacts at
    cage speed. Severity is drawn down to faint, so some faulty windows look healthy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(steps) / fs
    x = np.zeros((n, steps, axes))
    order = {1: 3.05, 2: 4.95, 3: 2.0}
    for i in range(n):
        fr = rng.uniform(22, 28)
        shaft = sum(rng.uniform(0.05, 0.3) / h * np.sin(2 * np.pi * h * fr * t + rng.uniform(0, 6.3))
                    for h in (1, 2, 3))
        sig = np.zeros(steps)
        if y[i]:
            rate = order[int(y[i])] * fr * rng.uniform(0.97, 1.03)
            f_res = {1: rng.uniform(1300, 1700), 2: rng.uniform(950, 1350), 3: rng.uniform(600, 1000)}[int(y[i])]
            damp = rng.uniform(250, 500)
            severity = rng.uniform(0.3, 1.5)
            pos = rng.uniform(0, 1 / rate)
            while pos < t[-1]:
                dt = t - pos
                ring = np.where(dt >= 0, np.exp(-damp * np.clip(dt, 0, None)) * np.sin(2 * np.pi * f_res * dt), 0)
                if y[i] == 2:  # load zone passes once per revolution
                    amp = 0.5 + 0.5 * np.cos(2 * np.pi * fr * pos)
                elif y[i] == 3:  # cage speed, about 0.4x shaft
                    amp = 0.6 + 0.4 * np.cos(2 * np.pi * 0.4 * fr * pos)
                else:
                    amp = 1.0
                sig += severity * amp * ring
                pos += (1 / rate) * (1 + rng.normal(0, 0.01))
        for a in range(axes):  # each axis sees the same source through its own path gain
            gain = rng.uniform(0.6, 1.2)
            x[i, :, a] = gain * (shaft + sig) + noise_g * rng.standard_normal(steps)
    return x.astype(np.float32), y.astype(np.int64)


def gear_vibration(n: int, seed: int, steps: int = 512, fs: float = 5000.0, noise_g: float = 0.35) -> Data:
    """Gearbox casing acceleration in g: 0 healthy, 1 worn (second mesh harmonic and +-shaft
    sidebands grow), 2 chipped tooth (a short once-per-revolution amplitude and phase kick).
    23-tooth pinion, shaft 15-25 Hz, a 50 Hz electrical line, broadband noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.arange(steps) / fs
    x = np.zeros((n, steps))
    for i in range(n):
        fr = rng.uniform(15, 25)
        fm = 23 * fr
        ph = rng.uniform(0, 2 * np.pi)
        wear = rng.uniform(0.3, 1.0) if y[i] == 1 else rng.uniform(0.0, 0.25)
        am = 1 + wear * 0.5 * np.cos(2 * np.pi * fr * t + ph)
        kick = np.zeros(steps)
        if y[i] == 2:
            phase0 = rng.uniform(0, 1 / fr)
            rev = np.mod(t - phase0, 1 / fr) * fr  # 0..1 position in the revolution
            kick = rng.uniform(0.5, 1.2) * np.exp(-0.5 * (np.minimum(rev, 1 - rev) / 0.02) ** 2)
        x[i] = (am * (1 + kick) * np.sin(2 * np.pi * fm * t + ph + kick)
                + (0.25 + 0.6 * wear) * np.sin(4 * np.pi * fm * t + 2 * ph)
                + 0.2 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 6.3))
                + noise_g * rng.standard_normal(steps))
    return x[:, :, None].astype(np.float32), y.astype(np.int64)


def _beat(t: np.ndarray, r: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One P-QRS-T complex (mV) with its R peak at sample r; fs is 100 Hz throughout."""
    def g(center: float, width: float, amp: float) -> np.ndarray:
        return amp * np.exp(-0.5 * ((t - center) / width) ** 2)

    if kind == "pvc":  # ectopic: no P wave, wide tall QRS, inverted T
        return g(r, 3.5, rng.uniform(1.2, 2.0)) - g(r + 5, 3.0, 0.6) - g(r + 22, 6.0, rng.uniform(0.3, 0.5))
    beat = (g(r - 3, 0.9, -0.15) + g(r, 1.0, rng.uniform(0.9, 1.3)) + g(r + 3, 1.1, -0.25)
            + g(r + 25, 5.0, rng.uniform(0.2, 0.35)))
    if kind == "st":  # ST elevation: the segment between S and T raised
        beat += g(r + 13, 6.0, rng.uniform(0.15, 0.35))
    if kind != "af":
        beat += g(r - 16, 3.0, rng.uniform(0.1, 0.2))
    return beat


def ecg_rhythm(n: int, seed: int, steps: int = 150, classes: int = 4, normalize: bool = False,
               noise_mv: float = 0.08) -> Data:
    """Single-lead ECG windows at 100 Hz in mV: 0 normal sinus, 1 contains a premature ventricular
    beat, 2 atrial fibrillation (irregular RR, no P waves, fibrillatory ripple), 3 ST elevation.
    `classes` keeps the first ones. Baseline wander (respiration), 50 Hz-like hum, muscle noise;
    `normalize` z-normalizes each window."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(steps, dtype=np.float64)
    x = np.zeros((n, steps))
    kinds = {0: "normal", 1: "normal", 2: "af", 3: "st"}
    for i in range(n):
        rr = rng.uniform(55, 95)
        r = rng.uniform(-20, rr)
        pvc_at = rng.integers(0, 2) if y[i] == 1 else -1
        k = 0
        while r < steps + 30:
            kind = "pvc" if k == pvc_at + 1 and y[i] == 1 else kinds[int(y[i])]
            x[i] += _beat(t, r, kind, rng)
            jitter = rng.uniform(-0.35, 0.35) if y[i] == 2 else rng.uniform(-0.04, 0.04)
            step = rr * (1 + jitter)
            if kind == "pvc" or (y[i] == 1 and k == pvc_at):
                step *= 0.65 if k == pvc_at else 1.35  # premature, then the compensatory pause
            r += step
            k += 1
        if y[i] == 2:
            x[i] += rng.uniform(0.04, 0.1) * np.sin(2 * np.pi * rng.uniform(0.05, 0.09) * t + rng.uniform(0, 6.3))
        x[i] += rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * t / rng.uniform(300, 600) + rng.uniform(0, 6.3))
        x[i] += rng.uniform(0, 0.05) * np.sin(2 * np.pi * 0.5 * t * rng.uniform(0.95, 1.0))
    x += noise_mv * _lowpass_noise(rng, (n, steps), 0.6) + rng.uniform(-0.3, 0.3, (n, 1))
    x = x[:, :, None]
    return (_znorm(x) if normalize else x).astype(np.float32), y.astype(np.int64)


def imu_activity(n: int, seed: int, steps: int = 100, fs: float = 50.0, classes: int = 4) -> Data:
    """Raw 6-axis IMU (accelerometer m/s^2 x,y,z; gyroscope deg/s x,y,z), not normalized:
    0 idle, 1 walking, 2 stairs, 3 running, 4 fall (`classes` keeps the first ones). Gravity sits
    mostly on z with a random tilt of the wrist; each window has a sensor bias (up to 0.3 m/s^2,
    3 deg/s). Walking and stairs share cadences; stairs add a vertical asymmetry and more pitch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(steps) / fs
    x = np.zeros((n, steps, 6))
    for i in range(n):
        tilt = rng.normal(0, 0.35, 2)
        g_dir = np.array([np.sin(tilt[0]), np.sin(tilt[1]), np.cos(tilt[0]) * np.cos(tilt[1])])
        acc = np.tile(9.81 * g_dir, (steps, 1))
        gyro = np.zeros((steps, 3))
        c = int(y[i])
        if c in (1, 2, 3):
            cadence = {1: rng.uniform(1.5, 2.2), 2: rng.uniform(1.3, 2.0), 3: rng.uniform(2.1, 3.2)}[c]
            amp = {1: rng.uniform(1.2, 4.5), 2: rng.uniform(1.5, 5.0), 3: rng.uniform(3.5, 11.0)}[c]
            ph = rng.uniform(0, 2 * np.pi)
            s = np.sin(2 * np.pi * cadence * t + ph)
            vertical = amp * (s + rng.uniform(0.2, 0.5 if c == 2 else 0.3) * np.sin(4 * np.pi * cadence * t + 2 * ph))
            acc[:, 2] += vertical
            acc[:, 0] += 0.5 * amp * np.sin(np.pi * cadence * t + ph)  # sway at half the step rate
            acc[:, 1] += 0.3 * amp * rng.standard_normal() * s
            pitch = rng.uniform(35, 70 if c == 2 else 50) * amp / 4 * np.sin(2 * np.pi * cadence * t + ph + 0.6)
            gyro[:, 1] += pitch
            gyro[:, 0] += 20 * np.sin(np.pi * cadence * t + ph)
            gyro[:, 2] += 10 * rng.standard_normal() * s
        elif c == 4:  # free fall, impact, then lying still with gravity on another axis
            at = rng.integers(20, 70)
            acc[at - 8:at] *= 0.2
            acc[at:at + 3] += rng.uniform(15, 35) * rng.standard_normal(3)
            new_dir = rng.normal(0, 1, 3)
            acc[at + 3:] = 9.81 * new_dir / np.linalg.norm(new_dir)
            gyro[at - 8:at + 3] += rng.uniform(100, 300) * rng.standard_normal(3)
        acc += rng.normal(0, 0.3, 3) + rng.uniform(0.3, 1.5) * rng.standard_normal((steps, 3))
        gyro += rng.normal(0, 3.0, 3) + rng.uniform(3, 15) * rng.standard_normal((steps, 3))
        x[i] = np.concatenate([acc, gyro], axis=1)
    return x.astype(np.float32), y.astype(np.int64)


def ppg_heart_rate(n: int, seed: int, steps: int = 256, fs: float = 25.0) -> Data:
    """Wrist PPG in arbitrary sensor units (offset about 500) -> heart rate / 100 (regression).
    Pulses with a dicrotic notch, 45-160 bpm with beat-to-beat variation, respiration baseline,
    and motion artifacts in some windows."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) / fs
    hr = rng.uniform(45, 160, n)
    x = np.zeros((n, steps))
    for i in range(n):
        period = 60 / hr[i]
        phase = np.cumsum(np.full(steps, 1 / fs / period) * (1 + 0.03 * np.sin(2 * np.pi * 0.25 * t)))
        phase = np.mod(phase + rng.uniform(0, 1), 1.0)
        pulse = np.exp(-0.5 * ((phase - 0.2) / 0.08) ** 2) + 0.4 * np.exp(-0.5 * ((phase - 0.55) / 0.1) ** 2)
        x[i] = 500 + rng.uniform(20, 60) * pulse + rng.uniform(5, 30) * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6))
        if rng.random() < 0.3:  # motion artifact: a slow, larger swing
            x[i] += rng.uniform(10, 60) * np.sin(2 * np.pi * rng.uniform(0.5, 2.5) * t + rng.uniform(0, 6))
        x[i] += rng.uniform(1, 5) * rng.standard_normal(steps)
    return x[:, :, None].astype(np.float32), (hr / 100.0).astype(np.float32)[:, None]


def emg_gestures(n: int, seed: int, steps: int = 200, channels: int = 4, gestures: int = 5) -> Data:
    """Surface EMG as raw 12-bit ADC counts (mid-scale offset about 2048): 0 rest, 1.. gestures,
    each a burst with its own pattern of channel activations (patterns overlap; gain varies by
    electrode placement). The burst starts anywhere in the window."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, gestures, n)
    patterns = np.array([[0, 0, 0, 0], [1, 0.6, 0.1, 0], [0, 1, 0.7, 0.1], [0.1, 0, 1, 0.7], [0.7, 0.1, 0, 1]])
    patterns = patterns[:gestures, :channels]
    x = np.zeros((n, steps, channels))
    tt = np.arange(steps)
    for i in range(n):
        onset, length = rng.integers(0, steps // 2), rng.integers(steps // 3, steps)
        env = 1 / (1 + np.exp(-(tt - onset) / 4)) * 1 / (1 + np.exp((tt - onset - length) / 6))
        placement = rng.uniform(0.5, 1.5, channels)
        carrier = _lowpass_noise(rng, (1, steps, channels), 0.7)[0]
        x[i] = 2048 + rng.normal(0, 20, channels) + 250 * placement * patterns[y[i]] * env[:, None] * carrier
    x += rng.uniform(10, 30, (n, 1, 1)) * rng.standard_normal(x.shape)
    return np.round(np.clip(x, 0, 4095)).astype(np.float32), y.astype(np.int64)


def keyword_tones(n: int, seed: int, steps: int = 512, fs: float = 4000.0, classes: int = 6) -> Data:
    """Audio-like 128 ms snippets at 4 kHz, amplitude in [-1, 1]: 0 steady tone, 1 up-chirp,
    2 down-chirp, 3 two-tone (DTMF-like), 4 warble (FM), 5 background only. Random pitch,
    loudness and onset; background noise at SNRs down to about 0 dB."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(steps) / fs
    x = np.zeros((n, steps))
    for i in range(n):
        f0 = rng.uniform(250, 700)
        c = int(y[i])
        if c == 0:
            inst = np.full(steps, f0)
        elif c in (1, 2):
            sweep = f0 * rng.uniform(0.6, 1.0) * (1 if c == 1 else -1)
            inst = f0 + sweep * (t / t[-1] - 0.5)
        elif c == 4:
            inst = f0 * (1 + rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * rng.uniform(15, 40) * t))
        else:
            inst = np.full(steps, f0)
        sig = np.sin(2 * np.pi * np.cumsum(inst) / fs + rng.uniform(0, 6.3))
        if c == 3:
            sig = 0.5 * sig + 0.5 * np.sin(2 * np.pi * f0 * rng.uniform(1.2, 1.5) * t)
        if c == 5:
            sig[:] = 0
        onset = rng.integers(0, steps // 3)
        env = np.clip((np.arange(steps) - onset) / 40, 0, 1)
        x[i] = rng.uniform(0.2, 0.7) * env * sig + rng.uniform(0.03, 0.2) * _lowpass_noise(rng, (1, steps), 0.5)[0]
    return np.clip(x, -1, 1)[:, :, None].astype(np.float32), y.astype(np.int64)


def wave_shapes(n: int, seed: int, steps: int = 150, classes: int = 2, noise: float = 0.6) -> Data:
    """Z-normalized univariate shapes: 0 sine, 1 sawtooth, 2 square, 3 triangle (`classes` keeps
    the first ones). Random period (20-60 steps), phase, a soft low-pass that rounds the edges,
    strong noise and a slow drift, so the shape is only partly visible."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(steps)
    x = np.zeros((n, steps))
    for i in range(n):
        p = np.mod(t / rng.uniform(20, 60) + rng.uniform(0, 1), 1.0)
        x[i] = [np.sin(2 * np.pi * p), 2 * p - 1, np.sign(np.sin(2 * np.pi * p)), 1 - 4 * np.abs(p - 0.5)][int(y[i])]
        k = rng.integers(1, 6)
        x[i] = np.convolve(x[i], np.ones(k) / k, mode="same")
        x[i] += rng.uniform(0, 1.0) * np.sin(2 * np.pi * t / rng.uniform(200, 500) + rng.uniform(0, 6))
    x += noise * rng.standard_normal((n, steps))
    return _znorm(x[:, :, None]).astype(np.float32), y.astype(np.int64)


def transient_events(n: int, seed: int, steps: int = 427, classes: int = 6) -> Data:
    """Z-normalized univariate monitoring series with one event type per window: 0 none, 1 spike,
    2 level step, 3 ramp, 4 oscillatory burst, 5 dip; on correlated (AR(1)) background noise,
    with event size drawn down to the noise level."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(steps)
    x = np.zeros((n, steps))
    white = rng.standard_normal((n, steps))
    for i in range(n):
        a = rng.uniform(0.5, 0.9)
        for k in range(1, steps):  # AR(1) background, sample by sample on purpose
            x[i, k] = a * x[i, k - 1] + white[i, k] * np.sqrt(1 - a * a)
        pos, size, width = rng.uniform(40, steps - 40), rng.uniform(2.0, 5.0), rng.uniform(5, 30)
        c = int(y[i])
        if c == 1:
            x[i] += size * 2.5 * np.exp(-0.5 * ((t - pos) / 1.5) ** 2)
        elif c == 2:
            x[i] += size / (1 + np.exp(-(t - pos) / 2))
        elif c == 3:
            x[i] += size * np.clip((t - pos) / (3 * width), 0, 1)
        elif c == 4:
            x[i] += size * np.exp(-0.5 * ((t - pos) / width) ** 2) * np.sin(2 * np.pi * t / rng.uniform(4, 9))
        elif c == 5:
            x[i] -= size * np.exp(-0.5 * ((t - pos) / width) ** 2)
    return _znorm(x[:, :, None]).astype(np.float32), y.astype(np.int64)


def denoise(n: int, seed: int, steps: int = 128, adc: bool = False) -> Data:
    """Denoising regression: a smooth signal (a few damped tones and a slow trend) buried in white
    noise and sparse spikes -> the clean signal. With `adc` the input is 12-bit counts around
    mid-scale (the target stays in volts-like units, as a model that scales internally ships)."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) / steps
    clean = np.zeros((n, steps))
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            clean[i] += (rng.uniform(0.2, 1.0) * np.exp(-rng.uniform(0, 3) * t)
                         * np.sin(2 * np.pi * rng.uniform(1, 8) * t + rng.uniform(0, 6.3)))
        clean[i] += rng.uniform(-0.5, 0.5) * t
    noisy = clean + rng.uniform(0.1, 0.35, (n, 1)) * rng.standard_normal((n, steps))
    noisy += (rng.random((n, steps)) < 0.01) * rng.uniform(-2, 2, (n, steps))
    if adc:
        noisy = np.round(2048 + 600 * noisy)
    return noisy[:, :, None].astype(np.float32), clean[:, :, None].astype(np.float32)
