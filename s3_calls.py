from common import *
from torch import nn
torch.manual_seed(0)
m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
x = torch.randn(3, 4); y = torch.randn(3, 2)
a = rec(m, lambda: m(x)); b = rec(m, lambda: (m(x), m(x)))
show("called once vs twice", a, b, full=True)

def fb():
    loss = ((m(x) - y) ** 2).mean(); loss.backward()
def fo():
    loss = ((m(x) - y) ** 2).mean()
a = rec(m, fo, grad=True); b = rec(m, fb, grad=True)
show("forward only vs forward+backward", a, b, full=True)
m.zero_grad(set_to_none=True)
opt = torch.optim.SGD(m.parameters(), lr=0.1)
def fbs():
    opt.zero_grad(); loss = ((m(x) - y) ** 2).mean(); loss.backward(); opt.step()
def fbn():
    opt.zero_grad(); loss = ((m(x) - y) ** 2).mean(); loss.backward()
a = rec(m, fbs, grad=True); b = rec(m, fbn, grad=True)
show("fwd+bwd+step vs fwd+bwd", a, b, full=True)
opt2 = torch.optim.Adam(m.parameters(), lr=0.1)
def fbs2():
    opt2.zero_grad(); loss = ((m(x) - y) ** 2).mean(); loss.backward(); opt2.step()
a = rec(m, fbn, grad=True); b = rec(m, fbs2, grad=True)
show("fwd+bwd vs fwd+bwd+adam step", a, b)
a = rec(m, fbs2, grad=True); b = rec(m, fbs2, grad=True)
show("adam step 2 vs step 3 (args differ expected)", a, b)
