"""How a trace is shown: the static HTML and text (`html`), the ipywidgets tree
(`widget`), and the notebook display that picks between them and redraws them (`display`)."""
