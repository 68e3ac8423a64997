#!/usr/bin/env python3
"""Monte Carlo of live-flow loss in xlb_ct (lb/bpf/conntrack.h) under a
uniform flood of new flows at the insert budget: per second, the share of L
live flows (each seen again every T = 1 s, as XDP's flow cache lets it)
whose way a flood insert evicts.

    RATE=250000 perf/sim/ct_flood.py L [L...]

prints, per L, the rate with the previous victim order ("old": empty, then
the oldest way) and with the hit bit ("new": empty, the oldest way never
seen again, and only when all 4 are hit the oldest). 131072 sets of 4 ways
(the default 524288 entries); ways not holding a live flow start as dead
flows that were hit (the worst case: a table full of finished connections);
a live flow that lost its way is re-inserted at its next packet and counted
hit at once (its second packet follows within a round trip). Invalid ways
(backend gone) and stamp resolution are not modelled. RATE=1 gives the
losses of sets holding more than 4 live flows, flood or not."""
import heapq, random, sys, math
import os
S = 131072; RATE = float(os.environ.get("RATE", "250000")); T = 1.0; DUR = 20.0; WARM = 5.0
lam = RATE / S
def run(L, policy, seed=1):
    rnd = random.Random(seed)
    sets = {}
    for f in range(L):
        sets.setdefault(rnd.randrange(S), []).append(f)
    losses = 0
    for s, flows in sets.items():
        ways = []  # [kind, id, stamp, hit]
        for f in flows[:4]:
            ways.append(['live', f, -rnd.random(), True])
        while len(ways) < 4:
            ways.append(['dead', -1, -2 - 100 * rnd.random(), True])
        ev = []
        for f in flows:
            heapq.heappush(ev, (rnd.random() * T, 'r', f))
        heapq.heappush(ev, (rnd.expovariate(lam), 'f', 0))
        def insert(kind, fid, t, hit):
            nonlocal losses
            if policy == 'new':
                un = [w for w in ways if not w[3]]
                pool = un if un else ways
            else:
                pool = ways
            v = min(pool, key=lambda w: w[2])
            if v[0] == 'live' and t >= WARM:
                losses += 1
            v[:] = [kind, fid, t, hit]
        while ev:
            t, k, f = heapq.heappop(ev)
            if t > DUR:
                break
            if k == 'f':
                insert('flood', -1, t, False)
                heapq.heappush(ev, (t + rnd.expovariate(lam), 'f', 0))
            else:
                w = next((w for w in ways if w[0] == 'live' and w[1] == f), None)
                if w:
                    w[2] = t; w[3] = True
                else:
                    insert('live', f, t, True)  # re-inserted; its next packet (RTT ~0) hits
                heapq.heappush(ev, (t + T, 'r', f))
    return losses / (L * (DUR - WARM))
for L in [int(x) for x in sys.argv[1:]]:
    print(L, 'old %.4f/s' % run(L, 'old'), 'new %.5f/s' % run(L, 'new'), flush=True)
