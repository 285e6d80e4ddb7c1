"""The teaching side: what a notebook shows, drawn from what the concept modules return.

The concept modules (namespaces, cgroups, kvm, trace, ...) do things and return data; this
package turns that data into pictures and playgrounds, and runs the chapters:

==============  ==============================================================================
``chapters``    the one table of chapters: what each teaches and what it needs from the machine
``lab``         ``lab.start("03")`` (every chapter's first cell), the doctor's report, reset
``diagrams``    every graphviz picture of the course
``plots``       every matplotlib chart
``widgets``     ipywidgets playgrounds (the chapter explorer, the system call explorer)
``stepper``     chapter 02's guest run one VM exit at a time, with its panel
==============  ==============================================================================

It may import any module of labhelper; only the notebooks, the exercises and the CLI import it.
Heavy libraries (graphviz, matplotlib, ipywidgets) are imported inside the functions that draw.
"""
