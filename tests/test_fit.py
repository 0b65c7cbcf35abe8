"""ignite_mlp.run.fit: Ctrl-C routed to a clean stop while the trainer runs, CUDA errors explained."""

import pytest


def test_sigint_is_routed_inside_the_block_and_restored_after() -> None:
    import signal

    from ignite_mlp.run.fit import StopRequest, sigint_routed_to

    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    with sigint_routed_to(stop):
        assert signal.getsignal(signal.SIGINT) is stop
        signal.raise_signal(signal.SIGINT)  # the first Ctrl-C only asks to stop
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second stops at once
    assert signal.getsignal(signal.SIGINT) is before


def test_cuda_errors_get_advice_and_others_pass_unchanged() -> None:
    from ignite_mlp.errors import CudaError
    from ignite_mlp.run.fit import cuda_errors_explained

    with pytest.raises(CudaError, match="rerun with --device cpu"), cuda_errors_explained():
        raise RuntimeError("CUDA error: device-side assert triggered")
    with pytest.raises(RuntimeError, match="^plain$"), cuda_errors_explained():
        raise RuntimeError("plain")
