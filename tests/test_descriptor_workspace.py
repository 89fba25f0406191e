"""The descriptor's scratch workspace: reused from batch to batch without ever
showing through in results (no aliasing between calls), per thread, not
pickled, and bitwise the same features and derivatives as fresh memory."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import torch

from nnpflow.descriptors import ChebyshevDescriptor, DescriptorDerivatives
from nnpflow.descriptors.workspace import Workspace

from test_descriptor import CUAU, cuau_cell, random_structure


def structures(seed, n=4):
    rng = np.random.default_rng(seed)
    out = [cuau_cell(rng, reps=(2, 1, 1)) for _ in range(n)]
    out.append(random_structure(rng, 9, ["Cu", "Au"], spread=1.5))      # isolated
    return out


def fresh_memory_results(batch):
    """Features and forces with a workspace that hands out fresh tensors."""
    desc = ChebyshevDescriptor(**CUAU)

    class NoReuse(Workspace):
        def take(self, name, shape, dtype, device):
            return torch.full(shape, float("nan"), dtype=dtype) if dtype.is_floating_point \
                else torch.empty(shape, dtype=dtype)

        def resizable(self, name, dtype, device):
            return torch.empty(0, dtype=dtype)

        def lend(self, name, shape, dtype, device, owner):
            return self.take(name, shape, dtype, device)

    desc.workspace = NoReuse()
    return results(desc, batch)


def results(desc, batch):
    feats, ders = desc.featurize_batch_with_derivatives(batch)
    w = torch.linspace(-1, 1, sum(len(s) for s in batch) * desc.n_features,
                       dtype=torch.float64).view(-1, desc.n_features)
    return [f.clone() for f in feats], DescriptorDerivatives.concatenate(ders).forces(w)


def test_reused_buffers_give_bitwise_the_same_results_and_never_alias():
    desc = ChebyshevDescriptor(**CUAU)
    a, b = structures(1), structures(2, n=6)
    fa, ffa = results(desc, a)
    feats_a, _ = desc.featurize_batch_with_derivatives(a)    # kept while b is computed
    fb, ffb = results(desc, b)                              # larger: buffers grow
    fa2, ffa2 = results(desc, a)                            # smaller: buffers reused
    assert desc.workspace.nbytes() > 0
    ref_a, ref_fa = fresh_memory_results(a)
    ref_b, ref_fb = fresh_memory_results(b)
    for got, ref in ((fa, ref_a), (fa2, ref_a), (feats_a, ref_a), (fb, ref_b)):
        assert all(torch.equal(x, y) for x, y in zip(got, ref))
    for got, ref in ((ffa, ref_fa), (ffa2, ref_fa), (ffb, ref_fb)):
        assert torch.equal(got, ref)
    desc.workspace.clear()
    assert desc.workspace.nbytes() == 0
    assert all(torch.equal(x, y) for x, y in zip(results(desc, a)[0], ref_a))


def test_threads_do_not_share_buffers():
    desc = ChebyshevDescriptor(**CUAU)
    batches = [structures(10 + k) for k in range(4)]
    expected = [fresh_memory_results(b)[0] for b in batches]
    got = [None] * len(batches)

    def work(k):
        for _ in range(3):
            got[k] = results(desc, batches[k])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, e in zip(got, expected):
        assert all(torch.equal(x, y) for x, y in zip(g, e))


def test_workspace_is_not_pickled_and_stays_off_other_devices():
    desc = ChebyshevDescriptor(**CUAU)
    desc.featurize_batch(structures(3))
    assert desc.workspace.nbytes() > 0
    copy = pickle.loads(pickle.dumps(desc))
    assert copy.workspace.nbytes() == 0
    assert torch.equal(copy.featurize(structures(3)[0]), desc.featurize(structures(3)[0]))
    ws = Workspace()
    meta = ws.take("x", (4, 5), torch.float32, torch.device("meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 5) and ws.nbytes() == 0
    t = ws.take("x", (4, 5), torch.float64, "cpu")
    assert t.is_contiguous() and t.shape == (4, 5) and ws.nbytes() == 160
    assert ws.take("x", (2, 3), torch.float64, "cpu").data_ptr() == t.data_ptr()


def test_lent_memory_is_reused_only_after_its_owner_is_gone():
    import gc

    class Owner:
        pass

    ws = Workspace()
    a, b = Owner(), Owner()
    ta = ws.lend("x", (10, 3), torch.float64, "cpu", a)
    tb = ws.lend("x", (10, 3), torch.float64, "cpu", b)       # a still alive: other memory
    assert ta.data_ptr() != tb.data_ptr()
    ptr = ta.data_ptr()
    del a, ta
    gc.collect()
    c = Owner()
    tc = ws.lend("x", (5, 3), torch.float64, "cpu", c)        # a's memory, now free
    assert tc.data_ptr() == ptr and tc.shape == (5, 3)
    assert ws.lend("x", (2,), torch.float64, "meta", c).device.type == "meta"


def test_cached_force_coefficients_survive_later_batches():
    """Coefficients kept by one batch (precompute) are not overwritten by the
    batches computed after it (their memory is lent, not shared scratch)."""
    desc = ChebyshevDescriptor(**CUAU)
    a, b = structures(4), structures(5, n=6)
    _, da = desc.featurize_batch_with_derivatives(a)
    _, db = desc.featurize_batch_with_derivatives(b)
    cat_a = DescriptorDerivatives.concatenate(da).precompute()
    w = torch.linspace(-1, 1, cat_a.n_atoms * desc.n_features,
                       dtype=torch.float64).view(-1, desc.n_features)
    before = cat_a.forces(w)
    for _ in range(3):                                       # other batches come and go
        cb = DescriptorDerivatives.concatenate(db)
        cb.forces(torch.ones(cb.n_atoms, desc.n_features, dtype=torch.float64))
        del cb
    assert torch.equal(cat_a.forces(w), before)
    assert torch.equal(before, fresh_memory_results(a)[1])
