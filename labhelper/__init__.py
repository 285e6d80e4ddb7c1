"""labhelper: the helper package of the course "Docker vs virtualization, from the kernel up".

Each module is named after the kernel concept it performs (namespaces, cgroups, kvm, ...) and
really does it, as root, on a machine declared disposable. Importing this package is cheap: heavy
libraries (pyroute2, graphviz, ipywidgets, matplotlib) are imported only by the functions that
use them.
"""
__version__ = "0.1.0"
