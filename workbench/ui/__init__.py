"""What the pages compute without Streamlit: form values, the Distill draft, tables, names,
the Compare logic, URL state, the HTML report and the figures."""
